"""``calmfirst qa``: finished transcripts scored, summarised and aggregated per agent.

readers (transcripts in) -> ``service.analyzer.ConversationAnalyzer`` -> rows (turns, conversations)
-> resume (the commit log) -> aggregate (per agent, totals, worst) -> report (HTML). ``run.run_qa``
ties them together; ``scoring`` holds the handling score. Import from the submodules: this package
itself loads nothing, so reading or scoring rows never loads the model.
"""
