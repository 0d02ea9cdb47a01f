"""fedsilo.governance: what a verified run says about its model, for the people who answer for it.

A model card from the verified lineage chain (`card.py`), the run's facts it is built from
(`run_facts.py`), and the export of a run to an experiment tracker (`mlflow_export.py`).
"""
