#!/usr/bin/env python
"""Runs yolact_d2/tools/gpu_check.py from a checkout (installed: `python -m yolact_d2.tools.gpu_check`)."""
import os, runpy  # noqa: E401

if __name__ == "__main__":
    # By path, not `from yolact_d2.tools...`: importing yolact_d2 needs Detectron2, which this script installs.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runpy.run_path(os.path.join(here, "yolact_d2", "tools", "gpu_check.py"), run_name="__main__")
