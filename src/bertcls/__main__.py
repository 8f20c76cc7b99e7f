"""`python -m bertcls` runs the CLI (also what torchrun and accelerate launch call)."""

from bertcls.cli import main

if __name__ == "__main__":
    main()
