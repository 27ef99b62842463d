"""Serving-engine profiles: how vLLM, SGLang and TRT-LLM schedule, launch and account memory."""
