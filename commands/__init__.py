"""The ``llmapi`` command line, and the commands that use every layer of the stack
(``up``, ``status``): the top floor, which nothing else imports."""
