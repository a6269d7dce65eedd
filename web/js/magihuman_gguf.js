// MagiHuman loaders: picking a .gguf file sets weight_dtype to "gguf (file)"; picking another file while
// weight_dtype says "gguf (file)" sets it back to "auto". Only when the artist picks (the widget's callback):
// loading a saved workflow sets widget values without callbacks, so it never changes them.
import { app } from "../../../scripts/app.js"; // served at /extensions/<pack>/js/: three levels up is the root

const GGUF_FILE = "gguf (file)";
const MODEL_WIDGET = {
  MagiHumanDiTLoader: "model_name",
  MagiHumanSRDiTLoader: "model_name",
  MagiHumanTextEncoderLoader: "text_encoder",
};

app.registerExtension({
  name: "MagiHuman.GGUFWeightDtype",
  nodeCreated(node) {
    if (!MODEL_WIDGET[node.comfyClass]) return;
    const widget = (name) => node.widgets?.find((w) => w.name === name);
    const model = widget(MODEL_WIDGET[node.comfyClass]);
    const dtype = widget("weight_dtype");
    if (!model || !dtype) return;
    const callback = model.callback;
    model.callback = function (value, ...rest) {
      if (String(value).toLowerCase().endsWith(".gguf")) dtype.value = GGUF_FILE;
      else if (dtype.value === GGUF_FILE) dtype.value = "auto";
      return callback?.call(this, value, ...rest);
    };
  },
});
