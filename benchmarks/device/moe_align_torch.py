"""SGLang's `moe_align_block_size` CUDA kernel contract in plain torch (no host sync), for where the kernel is absent:
the device check on a GPU without sgl_kernel, and the CPU test that runs SGLang's Triton MoE under Triton's
interpreter (tests/triton_moe). Only torch is imported, so both can load this file on its own."""


def align_block_size_torch(topk_ids, num_buckets, block_size, sorted_ids, expert_ids, num_tokens_post_pad,
                           cumsum_buffer, pad_sorted_ids=True, ignore_invalid_expert=False):
    """`moe_align_block_size`'s kernel contract, in torch and without a host sync: slot i of the flattened
    topk_ids goes to bucket id + 1 (bucket 0: id -1, a filtered expert); each bucket's slots, in slot order,
    fill its stretch of sorted_ids, each stretch padded to a multiple of block_size with topk_ids.numel();
    expert_ids[b] = the expert of block b; num_tokens_post_pad[0] = the padded total; cumsum_buffer = starts."""
    import torch

    if ignore_invalid_expert:
        raise NotImplementedError("ignore_invalid_expert is not needed by the device check")
    slots = topk_ids.reshape(-1).to(torch.long)
    numel, dev = slots.numel(), slots.device
    bucket = slots + 1
    counts = torch.bincount(bucket, minlength=num_buckets)[:num_buckets]
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.zeros(num_buckets + 1, dtype=torch.long, device=dev)
    starts[1:] = torch.cumsum(padded, 0)
    order = torch.argsort(bucket, stable=True)
    rank = torch.arange(numel, device=dev) - (torch.cumsum(counts, 0) - counts)[bucket[order]]
    if pad_sorted_ids:
        sorted_ids.fill_(numel)
    sorted_ids[starts[bucket[order]] + rank] = order.to(sorted_ids.dtype)
    block_starts = torch.arange(expert_ids.numel(), device=dev) * block_size
    block_bucket = torch.searchsorted(starts[1:], block_starts, right=True).clamp_(max=num_buckets - 1)
    expert_ids.copy_(block_bucket - 1)
    num_tokens_post_pad[:1].copy_(starts[-1:])
    cumsum_buffer[: num_buckets + 1].copy_(starts)
