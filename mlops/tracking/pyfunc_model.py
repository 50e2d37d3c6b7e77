"""MLflow "model from code": the pyfunc every task's model is logged as.

MLflow copies this file into the model's artifacts and runs it at load time, so no pickled Python
object is stored. The weights are a state_dict read with ``weights_only=True``; the spec (JSON) names
the task's inference module that rebuilds the network and its preprocessing.
"""

from __future__ import annotations

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class TaskModel(PythonModel):
    def load_context(self, context):
        from mlops.inference import load_predictor

        self.predictor = load_predictor(context.artifacts["weights"], context.artifacts["spec"])

    def predict(self, context, model_input, params=None):
        import numpy as np

        return self.predictor.predict_array(np.asarray(model_input, dtype=np.float32))


set_model(TaskModel())
