"""Processing posts at corpus scale: inputs read as streams of records (`sources`), and runs that batch posts by
length within windows, write one output line per input record in input order, resume after a crash and share
the work among the processes of a launch (`runs`). `postformer score`, `classify`, `generate` and `evaluate`
run on these."""

from .runs import WINDOW, Job, PostsRun, process_posts, processes, progress_folder
from .sources import BLANK, EMPTY, Lines, Record, Source, Texts, open_posts

__all__ = ["WINDOW", "EMPTY", "BLANK", "Job", "PostsRun", "Record", "Source", "Texts", "Lines", "open_posts",
           "process_posts", "processes", "progress_folder"]
