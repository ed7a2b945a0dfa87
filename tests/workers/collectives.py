"""Every collective, op and dtype at several sizes, against NumPy references built from every rank's known input.

Each rank also checks that its results are bit-identical to every other rank's. Every op and dtype runs at
sizes that take both allreduce algorithms (recursive doubling up to 64 KiB, the ring above it); a few
arrays of a million elements cross several ring segments per rank.
"""

import hashlib
import sys

import numpy as np

import distdl as dl

SIZES = [0, 1, 7, 1000, 70_001]  # 70_001 float16 is 140 KB: the ring, for every dtype
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]
OPS = ["sum", "mean", "max", "min", "prod"]
LARGE = 2 ** 20 + 3  # more than one 512 KiB segment per rank, on up to 4 ranks
LARGE_CASES = [(np.float32, "sum"), (np.float64, "mean"), (np.int64, "max"), (np.float16, "prod")]


def input_of(rank, n, dtype, op):
    """What ``rank`` contributes: small values, so that products and float16 sums stay in range."""
    rng = np.random.default_rng([rank, n, np.dtype(dtype).num, OPS.index(op)])
    if op == "prod":
        values = rng.choice([1, 2], n) if np.dtype(dtype).kind == "i" else rng.uniform(0.9, 1.1, n)
    else:
        values = rng.integers(-8, 9, n) if np.dtype(dtype).kind == "i" else rng.uniform(-1, 1, n)
    return values.astype(dtype)


def reference(inputs, op):
    stack = np.stack([x.astype(np.float64) if x.dtype.kind == "f" else x for x in inputs])
    result = {"sum": stack.sum(0), "max": stack.max(0), "min": stack.min(0), "prod": stack.prod(0)}.get(op)
    if op == "mean":
        result = stack.sum(0) / len(inputs) if stack.dtype.kind == "f" else np.floor_divide(stack.sum(0), len(inputs))
    return result


def tolerance(dtype, ranks):
    """How far a reduction over ``ranks`` values of at most 1.1 in magnitude may be from the exact one.

    Each of the ranks - 1 additions or products rounds once, by at most eps of a partial result of
    magnitude up to ``ranks`` (1.1 ** ranks for products), and the reference rounds once more.
    """
    if np.dtype(dtype).kind != "f":
        return 0.0
    return float(np.finfo(dtype).eps * ranks * 1.1 ** ranks * ranks)


def same_everywhere(comm, array, what):
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    digests = comm.allgather_json(digest)
    assert len(set(digests)) == 1, f"{what}: results differ across ranks"


def main():
    comm = dl.init()
    expected_backend = sys.argv[1]
    assert comm.backend == expected_backend, (comm.backend, expected_backend)
    rank, size = comm.rank, comm.size
    cases = [(n, dtype, op) for n in SIZES for dtype in DTYPES for op in OPS]
    for n, dtype, op in cases + [(LARGE, dtype, op) for dtype, op in LARGE_CASES]:
        mine = input_of(rank, n, dtype, op)
        want = reference([input_of(r, n, dtype, op) for r in range(size)], op)
        got = comm.allreduce(mine.copy(), op)
        assert got.dtype == dtype and got.shape == (n,)
        close = tolerance(dtype, size)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=close, atol=close,
                                   err_msg=f"allreduce {op} {np.dtype(dtype)} n={n}")
        same_everywhere(comm, got, f"allreduce {op} {np.dtype(dtype)} n={n}")
        if n and op in ("sum", "max"):
            scattered = comm.reduce_scatter(mine.copy(), op)
            part = np.array_split(want, size)[rank]
            np.testing.assert_allclose(scattered.astype(np.float64), part, rtol=close, atol=close,
                                       err_msg=f"reduce_scatter {op} n={n}")
    for n in SIZES + [LARGE]:
        data = input_of(rank, n, np.float32, "sum").reshape(-1, 1) if n else np.zeros((0, 1), np.float32)
        gathered = comm.allgather(data)
        np.testing.assert_array_equal(gathered, [input_of(r, n, np.float32, "sum").reshape(-1, 1) for r in range(size)])
        root = size - 1
        collected = comm.gather(data, root=root)
        if rank == root:
            np.testing.assert_array_equal(collected, gathered)
        else:
            assert collected is None
        shared = data.copy() if rank == root else np.zeros_like(data)
        comm.broadcast(shared, root=root)
        np.testing.assert_array_equal(shared, gathered[root])
    arrays = [np.full(5000, rank + i, np.float64) for i in range(4)]
    requests = [comm.iallreduce(array) for array in arrays]
    for i, (request, array) in enumerate(zip(requests, arrays)):
        request.wait()
        assert request.done()
        assert np.array_equal(array, np.full(5000, size * (size - 1) // 2 + size * i)), f"iallreduce {i} wrong"
    assert comm.broadcast_json({"from": rank, "text": "é"}, root=size - 1) == {"from": size - 1, "text": "é"}
    assert comm.allgather_json([rank]) == [[r] for r in range(size)]
    ragged = comm.allgather_ragged(np.full((rank, 2), rank, np.int64))  # rank 0 sends no rows at all
    assert [rows.tolist() for rows in ragged] == [[[r, r]] * r for r in range(size)]
    comm.barrier()
    dl.shutdown()
    print(f"rank {rank}: collectives ok")


if __name__ == "__main__":
    main()
