"""`python -m medclipseg ...`: the same CLI as the `medclipseg` command (the app starts workers this way)."""
from medclipseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
