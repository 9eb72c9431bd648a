"""Shared mechanics every algorithm uses once: weights by the ops that read them, masks, the fine-tuning loop, the
shrinkage regularisers, feature taps, the parameter counter, the int8 quantizer."""
