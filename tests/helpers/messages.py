"""Build Flower `Message` objects outside a running app (tests and benchmarks only).

A `Message` created without a running app needs its `Metadata` set explicitly
(`TaskIdentity.run_id` is otherwise unset); this module is the one place that does it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from fedsilo.common.codec import ModelLayout, encode_flat

RUN_ID = 1


def metadata(src_node_id: int, *, round_: int = 1, message_type: str = "train") -> Metadata:
    """Reply metadata from node `src_node_id` to the server (node 0)."""
    return Metadata(
        run_id=RUN_ID,
        message_id=f"msg-{src_node_id}-{round_}",
        src_node_id=src_node_id,
        dst_node_id=0,
        reply_to_message_id=f"ins-{src_node_id}-{round_}",
        group_id=str(round_),
        created_at=0.0,
        ttl=3600.0,
        message_type=message_type,
    )


def reply_content(
    delta: np.ndarray,
    num_examples: int,
    *,
    site_id: str = "site-0",
    train_loss: float = 0.5,
    layout: str | None = None,
) -> RecordDict:
    """Reply content following the fedsilo contract (flat delta + metrics + site record);
    ``layout`` defaults to one float32 layer ``"w"`` of the delta's size."""
    if layout is None:
        layout = ModelLayout(("w",), ((int(np.size(delta)),),), ("float32",)).to_json()
    return RecordDict(
        {
            "update": ArrayRecord({"delta": encode_flat(delta)}),
            "metrics": MetricRecord({"num-examples": num_examples, "train_loss": train_loss}),
            "site": ConfigRecord(
                {
                    "site_id": site_id,
                    "update_digest": "0" * 64,
                    "data_fingerprint": "f" * 64,
                    "signature": "s" * 128,
                    "layout": layout,
                }
            ),
        }
    )


def message(content: RecordDict, src_node_id: int, *, round_: int = 1) -> Message:
    """A reply `Message` carrying `content` from `src_node_id`."""
    return Message(content=content, metadata=metadata(src_node_id, round_=round_))


def error_message(reason: str, src_node_id: int, *, code: int = 1) -> Message:
    """An error reply from `src_node_id`."""
    return Message(error=Error(code=code, reason=reason), metadata=metadata(src_node_id))


def flower_reply(layers: Mapping[str, np.ndarray], num_examples: int, src_node_id: int) -> Message:
    """A reply in Flower's own strategy convention: per-layer model arrays + metrics."""
    return message(
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in layers.items()}),
                "metrics": MetricRecord({"num-examples": num_examples}),
            }
        ),
        src_node_id,
    )
