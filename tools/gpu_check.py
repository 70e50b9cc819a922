#!/usr/bin/env python
"""Runs yolact_d2/tools/gpu_check.py from a checkout (installed: `python -m yolact_d2.tools.gpu_check`)."""
import os, sys  # noqa: E401

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from yolact_d2.tools.gpu_check import main

    sys.exit(main())
