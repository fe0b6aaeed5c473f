"""Settings and logging, shared by every llmapi process."""
