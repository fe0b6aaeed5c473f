"""Settings, logging and the command line shared by every llmapi process."""
