"""``--chmod``: octal modes and ``chmod(1)`` symbolic modes, as BuildKit applies them.

Octal values (``0755``) set the permission bits plus setuid/setgid/sticky. Symbolic values
(``u=rwX,go=rX``, ``+x``, ``g=u``) are parsed and applied exactly as ``tonistiigi/dchapes-mode``
(a port of BSD ``setmode(3)``) does with a zero umask, which is what BuildKit's copy uses: ``X``
adds execute only to directories and to files that already had an execute bit, ``s`` and ``t``
need a ``u``/``g`` (or no) who, and consecutive ``+``/``-``/``X`` commands are folded together.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.fileops.errors import FileOpError

__all__ = ["Chmod", "ModeSet", "parse_chmod", "parse_mode"]

# chmod(1)'s bits (dchapes-mode's modet, a uint16).
_IS_UID = 0o4000
_IS_GID = 0o2000
_IS_TXT = 0o1000
_RWXU, _RUSR, _WUSR, _XUSR = 0o700, 0o400, 0o200, 0o100
_RWXG, _RGRP, _WGRP, _XGRP = 0o070, 0o040, 0o020, 0o010
_RWXO, _ROTH, _WOTH, _XOTH = 0o007, 0o004, 0o002, 0o001
_STANDARD = _IS_UID | _IS_GID | _RWXU | _RWXG | _RWXO
_U16 = 0xFFFF

# cmd2 flags of a copy command (u/g/o as the source of bits).
_CLEAR, _SET, _GBITS, _OBITS, _UBITS = 1, 2, 4, 8, 16


@dataclass(frozen=True, slots=True)
class _Cmd:
    cmd: str  # "+", "-", "X" (bits), or "u", "g", "o" (copy from that class)
    cmd2: int
    bits: int


@dataclass(frozen=True, slots=True)
class ModeSet:
    """A parsed symbolic (or octal) mode: a list of bit commands."""

    cmds: tuple[_Cmd, ...]

    def apply(self, mode: int, is_dir: bool) -> int:
        """The permission bits (``0o7777``) that ``mode``'s bits become.

        Args:
            mode: the current ``st_mode`` (only its ``0o7777`` bits are read).
            is_dir: whether the entry is a directory (``X`` then always adds execute).
        """
        omode = mode & 0o7777
        new = omode
        for c in self.cmds:
            if c.cmd in "ugo":
                if c.cmd == "u":
                    value = (new & _RWXU) >> 6
                elif c.cmd == "g":
                    value = (new & _RWXG) >> 3
                else:
                    value = new & _RWXO
                if c.cmd2 & _CLEAR:
                    clr = _RWXO if c.cmd2 & _SET else value
                    if c.cmd2 & _UBITS:
                        new &= ~((clr << 6) & c.bits)
                    if c.cmd2 & _GBITS:
                        new &= ~((clr << 3) & c.bits)
                    if c.cmd2 & _OBITS:
                        new &= ~(clr & c.bits)
                if c.cmd2 & _SET:
                    if c.cmd2 & _UBITS:
                        new |= (value << 6) & c.bits
                    if c.cmd2 & _GBITS:
                        new |= (value << 3) & c.bits
                    if c.cmd2 & _OBITS:
                        new |= value & c.bits
            elif c.cmd == "+":
                new |= c.bits
            elif c.cmd == "-":
                new &= ~c.bits
            elif c.cmd == "X" and (omode & (_XUSR | _XGRP | _XOTH) or is_dir):
                new |= c.bits
            new &= _U16
        return new & 0o7777


def _add(cmds: list[_Cmd], op: str, who: int, oparg: int, mask: int) -> None:
    # dchapes-mode's addcmd.
    if op == "=":
        cmds.append(_Cmd("-", 0, who if who else _STANDARD))
        op = "+"
    if op in "+-X":
        cmds.append(_Cmd(op, 0, (who & oparg) if who else (mask & oparg)))
        return
    cmd2 = 0
    if who:
        if who & _RUSR:
            cmd2 |= _UBITS
        if who & _RGRP:
            cmd2 |= _GBITS
        if who & _ROTH:
            cmd2 |= _OBITS
        bits = _U16
    else:
        cmd2 = _UBITS | _GBITS | _OBITS
        bits = mask
    cmd2 |= {"+": _SET, "-": _CLEAR, "=": _SET | _CLEAR}[chr(oparg)]
    cmds.append(_Cmd(op, cmd2, bits))


def _compress(cmds: list[_Cmd]) -> tuple[_Cmd, ...]:
    # Fold each run of +, - and X commands into at most one of each.
    out: list[_Cmd] = []
    i = 0
    while i < len(cmds):
        if cmds[i].cmd not in "+-X":
            out.append(cmds[i])
            i += 1
            continue
        setbits = clrbits = xbits = 0
        while i < len(cmds) and cmds[i].cmd in "+-X":
            c = cmds[i]
            if c.cmd == "-":
                clrbits |= c.bits
                setbits &= ~c.bits
                xbits &= ~c.bits
            elif c.cmd == "+":
                setbits |= c.bits
                clrbits &= ~c.bits
                xbits &= ~c.bits
            else:
                xbits |= c.bits & ~setbits
            i += 1
        if clrbits:
            out.append(_Cmd("-", 0, clrbits))
        if setbits:
            out.append(_Cmd("+", 0, setbits))
        if xbits:
            out.append(_Cmd("X", 0, xbits))
    return tuple(out)


def _syntax(text: str) -> FileOpError:
    return FileOpError(f"invalid chmod parameter: {text!r}: invalid syntax")


def parse_mode(text: str, umask: int = 0) -> ModeSet:
    """Parse a mode like ``chmod(1)`` (dchapes-mode's ``ParseWithUmask``).

    Raises:
        FileOpError: the text is not a valid mode.
    """
    if not text:
        raise _syntax(text)
    if "0" <= text[0] <= "9":
        if not all(c in "01234567" for c in text):
            raise _syntax(text)
        value = int(text, 8)
        if value > 0o77777 or value & ~(_STANDARD | _IS_TXT):
            raise _syntax(text)
        cmds: list[_Cmd] = []
        _add(cmds, "=", _STANDARD | _IS_TXT, value, 0)
        return ModeSet(tuple(cmds))

    mask = ~umask & _U16
    cmds = []
    s = text
    equal_done = False
    while True:
        who = 0
        while True:
            if not s:
                raise _syntax(text)
            ch = s[0]
            if ch == "a":
                who |= _STANDARD
            elif ch == "u":
                who |= _IS_UID | _RWXU
            elif ch == "g":
                who |= _IS_GID | _RWXG
            elif ch == "o":
                who |= _RWXO
            else:
                break
            s = s[1:]
        while True:  # "getop": several operators may follow one who (u+r-w)
            op, s = s[0], s[1:]
            if op == "=":
                equal_done = False
            elif op not in "+-":
                raise _syntax(text)
            who &= ~_IS_TXT
            perm = permx = 0
            while True:
                b = s[0] if s else ""
                if b == "r":
                    perm |= _RUSR | _RGRP | _ROTH
                elif b == "s":
                    if who == 0 or who & ~_RWXO:
                        perm |= _IS_UID | _IS_GID
                elif b == "t":
                    if who == 0 or who & ~_RWXO:
                        who |= _IS_TXT
                        perm |= _IS_TXT
                elif b == "w":
                    perm |= _WUSR | _WGRP | _WOTH
                elif b == "X":
                    if op != "-":
                        permx = _XUSR | _XGRP | _XOTH
                    else:
                        perm |= _XUSR | _XGRP | _XOTH
                elif b == "x":
                    perm |= _XUSR | _XGRP | _XOTH
                elif b in ("u", "g", "o"):
                    if perm:
                        _add(cmds, op, who, perm, mask)
                        perm = 0
                    if op == "=":
                        equal_done = True
                    if permx:
                        _add(cmds, "X", who, permx, mask)
                        permx = 0
                    _add(cmds, b, who, ord(op), mask)
                else:
                    if perm or (op == "=" and not equal_done):
                        if op == "=":
                            equal_done = True
                        _add(cmds, op, who, perm, mask)
                    if permx:
                        _add(cmds, "X", who, permx, mask)
                    break
                s = s[1:]
            if not s or s[0] == ",":
                break
        if not s:
            break
        s = s[1:]
    return ModeSet(_compress(cmds))


@dataclass(frozen=True, slots=True)
class Chmod:
    """A ``--chmod`` value: exactly one of ``octal`` and ``symbolic`` is set."""

    octal: int | None = None
    symbolic: ModeSet | None = None

    def apply(self, mode: int, is_dir: bool) -> int:
        """The ``0o7777`` bits an entry with ``mode`` gets."""
        if self.symbolic is not None:
            return self.symbolic.apply(mode, is_dir)
        assert self.octal is not None
        return self.octal & 0o7777

    @property
    def dir_perm(self) -> int | None:
        """The permission bits of directories a copy creates (octal only, as BuildKit)."""
        return None if self.octal is None else self.octal & 0o777


def parse_chmod(text: str) -> Chmod | None:
    """Classify a ``--chmod`` value as the Dockerfile frontend does; None for ``""``.

    An octal string up to ``07777`` is a mode; anything else is a symbolic mode.

    Raises:
        FileOpError: neither a valid octal nor a valid symbolic mode.
    """
    if not text:
        return None
    if all(c in "01234567" for c in text):
        value = int(text, 8)
        if value > 0o7777:
            raise FileOpError(
                f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
            )
        return Chmod(octal=value)
    return Chmod(symbolic=parse_mode(text))
