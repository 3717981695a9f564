"""Tier A: answers on this box with llama.cpp (engine, scheduler, prompt cache,
chat template, stops, LoRA adapters)."""
