"""One router per concern: health, labels, analyze (one message and batches), conversations, console."""
