"""What every runtime model class shares: open a task's artifact, check its graph against the
manifest and its tokenizer against the graph's vocabulary, and run rows through the one row
loop (`core.RowRunner`). `Embedder` and `Reranker` add only their task's input format and
post-processing (`qexport.tasks`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..tasks import Task
from .core import RowRunner, check_budget
from .graph_scan import check_token_ids, tokenizer_max_id
from .session import Opened, check_graph, open_artifact

if TYPE_CHECKING:
    import onnxruntime as ort


class TaskModel:
    """A loaded artifact of `task`: `path`, `manifest`, `session`, `encoder` (the task's input
    format, from `_encoder`) and `core` (the row runner)."""

    task: ClassVar[Task]

    def __init__(
        self,
        artifact: str | Path,
        device: str = "auto",
        *,
        threads: int | None = None,
        verify: bool = False,
        max_batch_tokens: int | None = None,
        io_binding: bool | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        check_budget(max_batch_tokens)  # before the (costly) load
        opened = open_artifact(artifact, self.task.name, device, threads, verify, session_options)
        self.path, self.manifest, self.session = opened.path, opened.manifest, opened.session
        check_graph(self.session, self.manifest, self.task)
        self.encoder = self._encoder(opened)
        prompt = self._prompt_ids()
        what = "the tokenizer or the manifest's prompt" if prompt else "the tokenizer"
        check_token_ids(
            opened.graph, max([tokenizer_max_id(self.encoder.tokenizer), *prompt]), what
        )
        self.core = RowRunner(
            self.session,
            self.task.output,
            pad_id=self._pad_id(),
            max_batch_tokens=max_batch_tokens,
            io_binding=io_binding,
            unit=self.task.unit,
            precision=self.manifest.precision,
        )

    # -- what a task's class says -------------------------------------------------------------

    def _encoder(self, opened: Opened) -> Any:
        """The task's input format: an object with a `tokenizer` and an `encode`."""
        raise NotImplementedError

    def _prompt_ids(self) -> list[int]:
        """Token ids the runtime adds itself (beside the tokenizer's own)."""
        return []

    def _pad_id(self) -> int:
        return 0

    # -- shared properties --------------------------------------------------------------------

    @property
    def max_batch_tokens(self) -> int:
        return self.core.max_batch_tokens

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def on_cuda(self) -> bool:
        return self.core.on_cuda

    @property
    def io_binding(self) -> bool:
        return self.core.io_binding
