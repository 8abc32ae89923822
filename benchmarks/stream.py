"""Streaming speed benchmark (JSON). Same as `python -m portrait_rt bench`; see portrait_rt/bench.py.

python benchmarks/stream.py --model preset:paper --device cuda --dtype bfloat16 --steps 12
python benchmarks/stream.py --model assets/portrait-rt-demo --threads 2 --minutes 10
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portrait_rt.bench import add_cli_arguments, cli_main  # noqa: E402

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_arguments(parser)
    sys.exit(cli_main(parser.parse_args()))
