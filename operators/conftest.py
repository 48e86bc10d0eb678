import sys
from pathlib import Path

# User operators are plain files, not a package: make them importable by their tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
