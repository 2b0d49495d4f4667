"""``python -m strongroom`` runs the CLI."""

from strongroom.cli.main import main

if __name__ == "__main__":
    main()
