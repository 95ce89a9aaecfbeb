"""``python -m lincompress`` (what ``torchrun -m lincompress`` and ``--nproc`` workers run): the CLI."""

from lincompress.cli import main
from lincompress.distributed.launch import die_with_launcher

if __name__ == "__main__":
    die_with_launcher()
    main(prog_name="lincompress")
