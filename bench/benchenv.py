"""What every benchmark takes: --build, --guest and --json, and the way to tests/integration/hydra_client.py (the
build's generated Python first)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(ap):
    """Adds the common options to the argparse parser ap and parses; args.build and args.guest come back absolute,
    and hydra_client can be imported afterwards."""
    ap.add_argument("--build", default=f"{ROOT}/build")
    ap.add_argument("--guest", default=None, help="the tiny test guest (default: BUILD/guest)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    args.guest = os.path.abspath(args.guest or f"{args.build}/guest")
    os.environ.setdefault("HYDRA_PYTHONPATH", f"{args.build}/python")
    sys.path[:0] = [os.environ["HYDRA_PYTHONPATH"], f"{ROOT}/tests/integration"]
    return args
