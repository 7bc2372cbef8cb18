"""Entry point of the agent zipapp (and of ``python3 -m runtime``)."""
import sys

from runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
