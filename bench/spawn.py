"""Start bench.py's measured commands from a small process, so their max RSS is their own.

A child's ``ru_maxrss`` (``wait4``) includes the memory of the process it was forked from: at
``exec`` the kernel records the old address space's high-water mark, and ``subprocess`` starts
its children with ``vfork`` (the parent's whole address space) or ``fork`` (a copy of its
anonymous pages). Started from bench.py, which imports the engine and runs builds of its own,
every command's figure would be at least bench.py's peak. This process (``python -I -S``,
standard library only, a few MB) forks each command instead.

Protocol on stdin/stdout: 4-byte big-endian length, then a ``marshal``\\ led request
``(argv, env, cwd or None, (uid, gid) or None, output path)``; the reply the same way,
``(wall seconds, exit code or -signal, max RSS in kB)`` or ``("error", text)`` when the command
could not be started. The command's stdout and stderr go to the output file, stdin is
/dev/null. The wall time runs from the fork to the end of ``wait4``.
"""

from __future__ import annotations

import marshal
import os
import time


def _read(n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def _reply(value: tuple[str, str] | tuple[float, int, int]) -> None:
    data = marshal.dumps(value)
    os.write(1, len(data).to_bytes(4, "big") + data)


def _exec(
    argv: list[str], env: dict[str, str], cwd: str | None, ids: tuple[int, int] | None, out: int
) -> None:
    """In the forked child: never returns."""
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        if ids is not None:
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
        if cwd is not None:
            os.chdir(cwd)
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, f"spawn: cannot run {argv[0]}: {exc}\n".encode())
    os._exit(127)


def main() -> None:
    while True:
        head = _read(4)
        if len(head) < 4:
            return
        argv, env, cwd, ids, output = marshal.loads(_read(int.from_bytes(head, "big")))
        try:
            out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _reply(("error", f"cannot open {output}: {exc}"))
            continue
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _exec(argv, env, cwd, ids, out)
        os.close(out)
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - start
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _reply((elapsed, code, int(usage.ru_maxrss)))


if __name__ == "__main__":
    main()
