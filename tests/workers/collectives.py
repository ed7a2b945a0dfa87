"""Every collective, op and dtype at several sizes, against NumPy references built from every rank's known input.

Each rank also checks that its results are bit-identical to every other rank's.
"""

import hashlib
import sys

import numpy as np

import distdl as dl

SIZES = [0, 1, 7, 1000, 2 ** 20 + 3]
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]
OPS = ["sum", "mean", "max", "min", "prod"]


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


def tolerance(dtype, n):
    return {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}.get(dtype, 0)


def same_everywhere(comm, array, what):
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    digests = comm.allgather_json(digest)
    assert len(set(digests)) == 1, f"{what}: results differ across ranks"


def main():
    comm = dl.init()
    expected_backend = sys.argv[1]
    assert comm.backend == expected_backend, (comm.backend, expected_backend)
    rank, size = comm.rank, comm.size
    for n in SIZES:
        for dtype in DTYPES:
            for op in OPS:
                mine = input_of(rank, n, dtype, op)
                want = reference([input_of(r, n, dtype, op) for r in range(size)], op)
                got = comm.allreduce(mine.copy(), op)
                assert got.dtype == dtype and got.shape == (n,)
                np.testing.assert_allclose(got.astype(np.float64), want, rtol=tolerance(dtype, n), atol=tolerance(dtype, n),
                                           err_msg=f"allreduce {op} {np.dtype(dtype)} n={n}")
                same_everywhere(comm, got, f"allreduce {op} {np.dtype(dtype)} n={n}")
                if n and op in ("sum", "max"):
                    scattered = comm.reduce_scatter(mine.copy(), op)
                    part = np.array_split(want, size)[rank]
                    np.testing.assert_allclose(scattered.astype(np.float64), part, rtol=tolerance(dtype, n),
                                               atol=tolerance(dtype, n), err_msg=f"reduce_scatter {op} n={n}")
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
    requests = [comm.iallreduce(np.full(5000, rank + i, np.float64)) for i in range(4)]
    for request in requests:
        request.wait()
        assert request.done()
    assert comm.broadcast_json({"from": rank, "text": "é"}, root=size - 1) == {"from": size - 1, "text": "é"}
    assert comm.allgather_json([rank]) == [[r] for r in range(size)]
    ragged = comm.allgather_ragged(np.full((rank, 2), rank, np.int64))  # rank 0 sends no rows at all
    assert [rows.tolist() for rows in ragged] == [[[r, r]] * r for r in range(size)]
    comm.barrier()
    dl.shutdown()
    print(f"rank {rank}: collectives ok")


if __name__ == "__main__":
    main()
