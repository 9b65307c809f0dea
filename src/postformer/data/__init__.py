"""Posts corpora: the bundled sample and `load_posts`, which reads JSONL, CSV, plain text or a saved
`datasets` folder into a `datasets.DatasetDict` with one "text" column and a validation split.

The package's modules, by job: `reading` reads data files of one format with `datasets` (and `read_text` a
UTF-8 text file), `diagnosis` says what is wrong with a file that could not be read (the line, the byte), and
`splits` turns files and folders into train/validation/test splits of posts (`load_labelled_files`: with every
column, for labelled posts).
"""

from .reading import ON_BAD_LINES, SkippedLinesWarning, read_text
from .splits import BUNDLED_POSTS, STREAMING_VALIDATION_POSTS, load_labelled_files, load_posts, load_posts_split

__all__ = [
    "BUNDLED_POSTS", "ON_BAD_LINES", "STREAMING_VALIDATION_POSTS", "SkippedLinesWarning", "load_labelled_files",
    "load_posts", "load_posts_split", "read_text",
]
