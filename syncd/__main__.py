"""`python -m syncd` is the same as the `syncd` command."""

from syncd.cli import entry

if __name__ == "__main__":
    entry()
