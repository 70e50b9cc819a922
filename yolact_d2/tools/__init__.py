"""The command-line tools (`python -m yolact_d2.tools.NAME` or the `yolact-NAME` console scripts;
in a checkout also `python tools/NAME.py`). Top floor: nothing in the package imports them."""
