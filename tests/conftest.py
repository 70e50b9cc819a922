"""Suite-wide test hygiene."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tools called in-process (train_net / visualize_predictions main) pin torch.set_num_threads
    from the config; later tests must see the process default, not a leaked value."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
