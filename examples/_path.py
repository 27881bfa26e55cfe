"""Let the examples run from a source checkout without installing: put the repository root on
sys.path when ``fastconv`` is not importable as an installed package."""
import importlib.util
import os
import sys

if importlib.util.find_spec("fastconv") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
