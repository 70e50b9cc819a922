#!/usr/bin/env python
"""Runs yolact_d2/tools/convert_imagenet_backbone.py from a checkout (installed: `python -m yolact_d2.tools.convert_imagenet_backbone`)."""
import os, sys  # noqa: E401

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from yolact_d2.tools.convert_imagenet_backbone import main

    sys.exit(main())
