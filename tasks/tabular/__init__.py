"""The built-in ``tabular`` task: CSV or Parquet files, a shared schema, no code.

See `fedsilo.tasks.tabular.task` (the task), `.schema` (``[task_options]``), `.data`
(a site's ``[data]`` table and file), `.stats` (federated standardisation), `.model`
and `.metrics` (models, losses and metrics per kind).
"""

from fedsilo.tasks.tabular.data import DataError, DataSource
from fedsilo.tasks.tabular.schema import SchemaError, TabularError, TabularSchema
from fedsilo.tasks.tabular.task import TabularTask

__all__ = ["DataError", "DataSource", "SchemaError", "TabularError", "TabularSchema",
           "TabularTask"]
