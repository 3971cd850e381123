import sys

from gui.launch import run

sys.exit(run())
