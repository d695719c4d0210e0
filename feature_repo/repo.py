"""The Feast objects at module level, where Feast's CLI looks for them (`make feast ARGS=plan`).

They are the objects the `feature_registry` asset applies, built by the same
function over the same lake (`FRAUDPIPE_DATA_DIR`), so `feast plan` after a
pipeline run shows no change. Feast imports this file; nothing else does,
which is why it may read the settings when imported.
"""

from feature_repo.definitions import entity_for, feast_objects, transaction_calendar
from feature_repo.store import lake_tables
from feature_repo.windows import CUSTOMER_SPENDING, TERMINAL_RISK
from settings import load_settings

_objects, fraud_model_service = feast_objects(lake_tables(load_settings().data))
_views = {obj.name: obj for obj in _objects}
customer = entity_for(CUSTOMER_SPENDING)
terminal = entity_for(TERMINAL_RISK)
customer_spending = _views[CUSTOMER_SPENDING.name]
terminal_risk = _views[TERMINAL_RISK.name]
calendar = transaction_calendar
