"""The LLM layer: one backend interface (`base`: vllm, hf, llamacpp, openai), the completion store (`store`), the
cached backend in front of it (`cached`) and the committed completions as files (`completions`)."""
