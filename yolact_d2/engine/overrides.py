"""`key=value` command-line overrides of a LazyConfig, with unknown keys rejected by name."""
import difflib
import inspect
from typing import List

from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig

__all__ = ["apply_overrides", "UnknownConfigKeyError"]

_MISSING = object()


class UnknownConfigKeyError(KeyError):
    def __str__(self):  # KeyError would print the repr (quoted, with escaped newlines)
        return str(self.args[0])


def _all_keys(cfg, prefix="") -> List[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            v = cfg._get_node(k)
            if isinstance(v, (DictConfig, ListConfig)):
                keys.extend(_all_keys(v, full + "."))
    return keys


def _target_accepts(node, name: str) -> bool:
    """Whether a LazyCall node's target takes keyword `name` (a default not written in the config)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target is None:
        return False
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return False
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_key(cfg, key: str) -> None:
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_MISSING) if parent_key else cfg
    if parent is not _MISSING and _target_accepts(parent, name):
        return  # a constructor argument left at its default in the config file
    candidates = _all_keys(cfg)
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if parent is _MISSING:
        where = f"'{parent_key}' does not exist in the config"
    else:
        where = f"'{parent_key or '<root>'}' has no key '{name}'"
    raise UnknownConfigKeyError(f"Unknown config key '{key}' in override '{key}=...': {where}.{hint}")


def apply_overrides(cfg, overrides: List[str]):
    """Like LazyConfig.apply_overrides, but an override whose key is neither in the config nor an
    argument of the LazyCall target it belongs to raises UnknownConfigKeyError naming the key and
    the closest existing keys (omegaconf would silently add it)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override '{item}' is not of the form key=value (e.g. train.max_iter=1000).")
        key = item.split("=", 1)[0].strip().lstrip("+~")
        _check_key(cfg, key)
    return LazyConfig.apply_overrides(cfg, overrides)
