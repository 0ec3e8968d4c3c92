"""LLaVA descriptions keyed by image_id: the reader lives in the runtime (predict takes `--llava-file` too)."""

from crisis_tool.runtime.llava_text import parse_jsonl, read_llava_file

__all__ = ["parse_jsonl", "read_llava_file"]
