"""Build the project's 8k slice of real SVHN from the official test file.

    svhn-jax download --dir svhn_mat
    python scripts/make_slice.py --mat svhn_mat/test_32x32.mat --out ../shared/data/svhn_test_8k.npz

The slice is images 0..7999, in order, of the official test split (`test_32x32.mat`),
written as a compressed .npz (--n N takes images 0..N-1 instead):

    X      uint8 (8000, 32, 32, 3)   pixels, transposed from the file's (32, 32, 3, N)
    y      int64 (8000,)             digits 0..9 (the file's label 10 is the digit 0)
    index  int64 (8000,)             each image's position in test_32x32.mat

It prints the sha256 of the file it wrote and says whether the .mat file was the
official one (its published checksum). The README gives the sha256 the project's own
slice has. The parent folders of --out are created; an existing --out is refused.

Exit codes: 0 written, 2 bad argument (--out exists), 3 the .mat file is missing,
unreadable or holds fewer than --n images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from svhn_jax import atomic, data, errors
from svhn_jax.flags import Parser



def build_parser() -> Parser:
    p = Parser(prog="make_slice.py", description="Images 0..7999 of the official SVHN "
               "test_32x32.mat as an .npz (X, y, index): the project's 8k slice.")
    p.add_argument("--mat", required=True, help="the official test_32x32.mat "
                   "(svhn-jax download --dir D fetches it into D)")
    p.add_argument("--out", required=True, help="the .npz to write, e.g. "
                   "../shared/data/svhn_test_8k.npz (must not exist)")
    p.add_argument("--n", type=int, default=8000, help="images 0..N-1 (default 8000: the project's slice)")
    return p


def make_slice(mat, out, n: int = 8000) -> str:
    """Write images 0..n-1 of `mat` to `out`; returns the sha256 of the written file."""
    mat, out = Path(mat), Path(out)
    if out.exists():
        raise errors.SvhnJaxError(f"--out {out} already exists; delete it or choose another path")
    if not mat.is_file():
        raise errors.DataError(f"{mat} does not exist; svhn-jax download --dir D fetches "
                               f"D/test_32x32.mat")
    if n < 1:
        raise errors.SvhnJaxError(f"--n must be at least 1, got {n}")
    X, y = data.read_mat(mat)
    if len(y) < n:
        raise errors.DataError(f"{mat} holds {len(y):,} images, fewer than --n {n:,}; "
                               f"pass the official test_32x32.mat (26,032 images)")
    name, size, sha = data.OFFICIAL["test"]
    official = mat.stat().st_size == size and data.sha256_file(mat) == sha
    atomic.write_with(out, lambda f: np.savez_compressed(
        f, X=X[:n], y=y[:n].astype(np.int64), index=np.arange(n, dtype=np.int64)))
    print(f"wrote {out}: images 0..{n - 1} of {mat} "
          + ("(the official test_32x32.mat, checksum verified)" if official else
             f"(not the official {name}: its checksum differs)"))
    digest = data.sha256_file(out)
    print(f"sha256 {digest}")
    return digest


def run(args) -> int:
    make_slice(args.mat, args.out, args.n)
    return errors.EXIT_OK


def main(argv=None) -> int:
    return errors.run(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
