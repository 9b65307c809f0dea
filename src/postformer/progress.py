"""Progress bars: one switch (`--quiet`) for ours and the libraries' (transformers' loading, saving and training
bars, datasets' map and load bars, huggingface_hub's downloads)."""

from contextlib import contextmanager


@contextmanager
def progress_bars(enabled: bool = True):
    """Within the block, the libraries' progress bars are on or off as asked; their earlier state is restored
    after it."""
    import datasets
    from transformers.utils import logging

    was_transformers, was_datasets = logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was_transformers else logging.disable_progress_bar)()
        (datasets.enable_progress_bars if was_datasets else datasets.disable_progress_bars)()


__all__ = ["progress_bars"]
