// lumina2t.report: shows the text our nodes return as UI output (dataset scan report, cache summary, saved path)
// in a read-only box on the node. Not serialized: it adds nothing to the workflow or the prompt.
import { app } from "../../../scripts/app.js";

const NAME = "lumina2t.report";
const REPORT_NODES = new Set(["Lumina2T_LoadDataset", "Lumina2T_LoadImageDataset", "Lumina2T_CacheLatentsText",
  "Lumina2T_SaveLoRA"]);

function reportWidget(node) {
  if (node.lumina2tReport) return node.lumina2tReport;
  const box = document.createElement("pre");
  box.style.cssText = "margin:0;padding:4px;width:100%;height:100%;overflow:auto;white-space:pre-wrap;" +
    "font:11px monospace;color:var(--input-text, #ddd);background:var(--comfy-input-bg, #222);border-radius:4px;";
  const widget = node.addDOMWidget("report", "lumina2t_report", box, {
    serialize: false, hideOnZoom: false, getMinHeight: () => 60,
  });
  widget.serialize = false;
  node.lumina2tReport = box;
  return box;
}

if (!app.extensions?.some?.((e) => e.name === NAME)) {  // the web folder may be served under two names
  app.registerExtension({
    name: NAME,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!REPORT_NODES.has(nodeData.name)) return;
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = onExecuted?.apply(this, arguments);
        const text = message?.text;
        if (text) {
          reportWidget(this).textContent = Array.isArray(text) ? text.join("\n") : String(text);
          this.setSize?.([this.size[0], Math.max(this.size[1], this.computeSize()[1])]);
          this.setDirtyCanvas?.(true, true);
        }
        return r;
      };
    },
  });
}
