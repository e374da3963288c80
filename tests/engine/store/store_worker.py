"""A separate process that uses a store (run as a script by the crash, lease and concurrency
tests; not a test module).

    store_worker.py crashloop ROOT SEED        commit/lookup/prune forever (to be SIGKILLed)
    store_worker.py hold ROOT KEY              lease the result under KEY, print "held", wait
    store_worker.py hammer ROOT NAME ROUNDS    commit/lookup overlapping keys, print JSON lines
    store_worker.py pruner ROOT STOPFILE       prune in a loop until STOPFILE exists
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from engine.store.gc import prune
from engine.store.store import BuildRecord, StepRecord, Store


def write_diff(store: Store, lease: object, key: str, rng: random.Random) -> Path:
    from engine.store.store import Lease

    assert isinstance(lease, Lease)
    d = store.new_diff_dir(lease)
    (d / "sub").mkdir()
    for i in range(rng.randint(1, 30)):
        (d / "sub" / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 4096)))
    (d / "big").write_bytes(b"z" * rng.randint(0, 300_000))
    (d / "key").write_text(key)
    (d / "done").write_text("1")  # written last: a published diff must have it
    return d


def crashloop(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = Store.open(root)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        with store.lease() as lease:
            base: tuple[str, ...] = ()
            for depth in range(rng.randint(1, 4)):
                key = f"k{depth}-{rng.randint(0, 6)}"
                hit = store.lookup([key], lease)
                if hit is not None and rng.random() < 0.7:
                    base = hit.layers
                    continue
                d = write_diff(store, lease, key, rng)
                r = store.commit(
                    keys=[key, f"alt-{key}"],
                    base=base,
                    diff=d,
                    exec_ns=rng.randint(1, 10**9),
                    description=f"step {depth}",
                    lease=lease,
                )
                store.set_checksum(r, "spec", f"sha256:{n}")
                store.add_keys(r, [f"content-{key}"])
                base = r.layers
            if rng.random() < 0.3:
                store.blobs.put_bytes(rng.randbytes(rng.randint(0, 200_000)))
            if rng.random() < 0.2:
                store.record_build(
                    BuildRecord(
                        name="crash",
                        time_ns=time.time_ns(),
                        target="",
                        status="executed",
                        steps=(StepRecord("d", "n", 1, "", 1, "RUN x", "k", "executed"),),
                    )
                )
        roll = rng.random()
        if roll < 0.15:
            prune(store, all=True)
        elif roll < 0.3:
            prune(store, max_used_space=rng.randint(0, 2_000_000))


def hold(root: Path, key: str) -> None:
    store = Store.open(root)
    with store.lease() as lease:
        hit = store.lookup([key], lease)
        print("held" if hit is not None else "miss", flush=True)
        sys.stdin.read()  # until the test closes our stdin (or kills us)


def hammer(root: Path, name: str, rounds: int) -> None:
    rng = random.Random(name)
    store = Store.open(root)
    for i in range(rounds):
        with store.lease() as lease:
            a_key = f"a{rng.randint(0, 4)}"
            b_key = f"b{a_key}-{rng.randint(0, 2)}"
            steps = []
            a = store.lookup([a_key], lease)
            if a is None:
                a = store.commit(
                    keys=[a_key],
                    base=(),
                    diff=write_diff(store, lease, a_key, rng),
                    exec_ns=1,
                    description=a_key,
                    lease=lease,
                )
                steps.append("commit-a")
            b = store.lookup([b_key], lease)
            if b is None:
                b = store.commit(
                    keys=[b_key],
                    base=a.layers,
                    diff=write_diff(store, lease, b_key, rng),
                    exec_ns=1,
                    description=b_key,
                    lease=lease,
                )
                steps.append("commit-b")
            again = store.lookup([a_key], lease)
            record = {
                "round": i,
                "a_key": a_key,
                "b_key": b_key,
                "a": a.id,
                "a_layers": list(a.layers),
                "b": b.id,
                "b_layers": list(b.layers),
                "a_again": again.id if again else None,
                "a_marker": (store.diff_path(a.layers[-1]) / "key").read_text(),
                "b_marker": (store.diff_path(b.layers[-1]) / "key").read_text(),
                "b_base_marker": (store.diff_path(b.layers[-2]) / "key").read_text(),
                "dirs_ok": all(p.is_dir() for p in store.layer_paths(b)),
                "steps": steps,
            }
            print(json.dumps(record), flush=True)


def pruner(root: Path, stop: Path) -> None:
    rng = random.Random(0)
    store = Store.open(root)
    count = 0
    while not stop.exists() or count == 0:
        if rng.random() < 0.5:
            prune(store, all=True)
        else:
            prune(store, max_used_space=rng.randint(0, 1_000_000))
        count += 1
    print(json.dumps({"prunes": count}), flush=True)


def main(argv: list[str]) -> None:
    mode, root = argv[0], Path(argv[1])
    if mode == "crashloop":
        crashloop(root, int(argv[2]))
    elif mode == "hold":
        hold(root, argv[2])
    elif mode == "hammer":
        hammer(root, argv[2], int(argv[3]))
    elif mode == "pruner":
        pruner(root, Path(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
