// MagiHuman loaders with a weight_dtype from the pack's storage registry (web/storage.json, written from
// magihuman/storage/registry.py by workflows/build_workflows.py):
// - picking a .gguf file sets weight_dtype to the storage that keeps what the file holds (`file`); picking another
//   file while it says so sets it back to "auto". Only when the artist picks (the widget's callback): loading a
//   saved workflow sets widget values without callbacks, so it never changes them;
// - a saved workflow holding an older name of that storage (e.g. `gguf (file)`) gets the current one when it loads.
import { app } from "../../../scripts/app.js"; // served at /extensions/<pack>/js/: three levels up is the root

const settings = await fetch(new URL("../storage.json", import.meta.url)).then((r) => r.json());

function storageWidgets(node) {
  const dtype = node.widgets?.find((w) => w.name === "weight_dtype");
  const values = dtype?.options?.values;
  if (!Array.isArray(values) || !values.includes(settings.keep_file)) return null;
  const model = node.widgets.find((w) => w !== dtype && w.type === "combo"); // the model list comes first
  return model ? { model, dtype } : null;
}

app.registerExtension({
  name: "MagiHuman.StorageWeightDtype",
  nodeCreated(node) {
    const found = storageWidgets(node);
    if (!found) return;
    const { model, dtype } = found;
    const callback = model.callback;
    model.callback = function (value, ...rest) {
      const compact = settings.compact_suffixes.some((s) => String(value).toLowerCase().endsWith(s));
      if (compact) dtype.value = settings.keep_file;
      else if (dtype.value === settings.keep_file) dtype.value = "auto";
      return callback?.call(this, value, ...rest);
    };
    const onConfigure = node.onConfigure;
    node.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      const renamed = settings.older_names[dtype.value];
      if (renamed) dtype.value = renamed;
      return result;
    };
  },
});
