"""A slot-based key/value cache for batched decoding where every row has its own length.

Each running request owns one slot (a row of preallocated ``[slots, kv_heads, length,
head_dim]`` tensors per layer). Its tokens sit at their true positions 0..n-1, so rotary or
learned position embeddings see exactly what a single-sequence run sees; rows shorter than
the longest are masked. Active slots are kept dense (0..rows-1): freeing a slot moves the
last row into it. Tensors grow (in rows and in length) as needed and are freed when the
batch empties, so the footprint follows the load.

It is a transformers ``Cache``: the model's attention layers call ``update`` during a
decode forward and get back the keys/values to attend over. Prompts are prefilled with a
plain ``DynamicCache`` (exactly as ``generate`` does) and copied into their slot. Its
tensors are inference tensors: every method that writes them runs in inference mode, so the
engine may free a slot from any thread.

Knows nothing about requests, sampling or scheduling.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer

LENGTH_GRANULE = 128  # length is allocated in multiples of this


def is_plain_dynamic(cache: DynamicCache) -> bool:
    """True when every layer is a full-attention ``DynamicLayer`` (no sliding window, no
    linear attention): the layouts this cache can take over."""
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class _SlotLayer(CacheLayerMixin):
    is_compileable = False
    is_sliding = False

    def __init__(self, owner: SlotKVCache, index: int):
        super().__init__()
        self._owner = owner
        self._index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        o = self._owner
        keys, values = o.keys[self._index], o.values[self._index]
        # one new token per row, each written at its own position
        keys[o.row_index, :, o.write_pos] = key_states[:, :, 0].to(keys.dtype)
        values[o.row_index, :, o.write_pos] = value_states[:, :, 0].to(values.dtype)
        return keys[:o.rows, :, :o.kv_len], values[:o.rows, :, :o.kv_len]

    def get_seq_length(self) -> int:
        return self._owner.kv_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.kv_len, 0

    def get_max_length(self) -> int:
        return -1


class SlotKVCache(Cache):
    def __init__(self, num_layers: int, max_slots: int, max_length: int, device: torch.device,
                 dtype: torch.dtype):
        super().__init__(layers=[_SlotLayer(self, i) for i in range(num_layers)])
        self.max_slots, self.max_length = max_slots, max_length
        self.device, self.dtype = device, dtype
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.rows_allocated = 0
        self.length_allocated = 0
        # state of the decode step in flight (set by begin_decode)
        self.rows = 0
        self.kv_len = 0
        self.row_index = torch.zeros(0, dtype=torch.long, device=device)
        self.write_pos = torch.zeros(0, dtype=torch.long, device=device)

    # --------------------------------------------------------------- memory

    def nbytes(self) -> int:
        tensors = (t for t in (*self.keys, *self.values) if t is not None)
        return sum(t.numel() * t.element_size() for t in tensors)

    def release(self) -> None:
        """Free every tensor (when no request is running)."""
        n = len(self.keys)
        self.keys, self.values = [None] * n, [None] * n
        self.rows_allocated = self.length_allocated = 0

    @torch.inference_mode()
    def _grow(self, rows: int, length: int, like: list[torch.Tensor]) -> None:
        allocated = self.keys[0] is not None
        if allocated and rows <= self.rows_allocated and length <= self.length_allocated:
            return
        new_rows, new_len = self.rows_allocated, self.length_allocated
        if rows > self.rows_allocated:  # doubling: few reallocations as the batch fills
            new_rows = min(self.max_slots, max(rows, 2 * self.rows_allocated, 4))
        if length > self.length_allocated:  # x1.5 in whole granules
            granules = -(-max(length, self.length_allocated * 3 // 2) // LENGTH_GRANULE)
            new_len = min(self.max_length, granules * LENGTH_GRANULE)
        for i, sample in enumerate(like):  # sample: [1, kv_heads, n, head_dim] of layer i
            shape = (new_rows, sample.shape[1], new_len, sample.shape[3])
            for store in (self.keys, self.values):
                old = store[i]
                fresh = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if old is not None:
                    fresh[:old.shape[0], :, :old.shape[2]] = old
                store[i] = fresh
        self.rows_allocated, self.length_allocated = new_rows, new_len

    # --------------------------------------------------------------- slots

    def ensure(self, rows: int, length: int) -> None:
        """Room for ``rows`` slots of ``length`` positions (allocated already by a prefill)."""
        if rows > self.rows_allocated or length > self.length_allocated:
            self._grow(rows, length, [k[:1, :, :1] for k in self.keys])

    @torch.inference_mode()
    def store_prefill(self, slot: int, prefill: DynamicCache, length: int, row: int = 0) -> None:
        """Copy the first ``length`` positions of ``row`` of a prefill's ``DynamicCache``
        into ``slot``."""
        keys = [layer.keys for layer in prefill.layers]
        self._grow(slot + 1, length + 1, keys)
        for i, layer in enumerate(prefill.layers):
            self.keys[i][slot, :, :length] = layer.keys[row, :, :length]
            self.values[i][slot, :, :length] = layer.values[row, :, :length]

    @torch.inference_mode()
    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src``'s first ``length`` positions into slot ``dst``."""
        for store in (self.keys, self.values):
            for t in store:
                t[dst, :, :length] = t[src, :, :length]

    @torch.inference_mode()
    def begin_decode(self, positions: list[int]) -> torch.Tensor:
        """Prepare a decode step for slots 0..len(positions)-1, row i writing at
        ``positions[i]``; returns the additive attention mask ``[rows, 1, 1, kv_len]``."""
        self.rows = len(positions)
        self.kv_len = max(positions) + 1
        self.ensure(self.rows, self.kv_len)
        self.write_pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        self.row_index = torch.arange(self.rows, device=self.device)
        visible = torch.arange(self.kv_len, device=self.device)[None, :] <= self.write_pos[:, None]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        return mask[:, None, None, :]
