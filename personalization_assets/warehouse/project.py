"""The dbt project of the warehouse layer, and nothing else.

Kept alone in this module so `dagster-dbt project prepare-and-package --file
personalization_assets/warehouse/project.py` can import it without loading any assets. The manifest is
parsed with the `local` target: it is the same for both targets apart from the adapter type, which the
translator replaces by environment (see translator.py); runs pass `--target` from the environment.
"""

from pathlib import Path

from dagster_dbt import DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target="local")
