"""``python -m proca``: the same CLI as the ``proca`` command."""

from proca.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
