// BitLayout view: draws the `rows` that Python computed and sends bit clicks back.
// No float arithmetic happens here: Python (bigsmall_lab.bits, torch) decides every bit and value.

const FIELD_TITLES = {
  sign: "sign bit",
  exponent: "exponent bit",
  mantissa: "mantissa bit",
  integer: "integer bit",
};

// float.exposed's view of the stored value: its neighbours, the step there, its exact decimal.
const NEAR = [
  ["below", "next below", "the largest value this format has below the stored one"],
  ["above", "next above", "the smallest value this format has above the stored one"],
  ["gap", "gap", "the step from the stored value to the next larger magnitude"],
  ["decimal", "exactly", "the stored value written out in decimal, every digit"],
];

const LEGEND = [
  ["sign", "sign"],
  ["exponent", "exponent"],
  ["mantissa", "mantissa (fraction)"],
  ["integer", "integer bits (two's complement)"],
];

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render({ model, el }) {
  const root = make("div", "bsl-bitlayout");
  el.appendChild(root);

  root.appendChild(make("div", "bsl-title", "One number in every format"));
  root.appendChild(
    make(
      "div",
      "bsl-hint",
      "Type a number (70000, 1 + 2**-8, 1e-8, -0.0, nan) and press Enter. Click any bit to flip it. " +
        "Under each value: the format's neighbouring values, the gap there and the exact decimal it stores.",
    ),
  );

  // --- value input ---
  const inputLine = make("label", "bsl-input-line");
  inputLine.appendChild(make("span", "bsl-input-label", "value"));
  const input = make("input", "bsl-input");
  input.type = "text";
  input.spellcheck = false;
  input.setAttribute("aria-label", "value to store");
  inputLine.appendChild(input);
  root.appendChild(inputLine);
  const commit = () => {
    if (input.value !== model.get("value")) {
      model.set("value", input.value);
      model.save_changes();
    }
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") commit();
  });
  input.addEventListener("change", commit);

  const message = make("div", "bsl-message");
  message.setAttribute("role", "alert");
  root.appendChild(message);

  // --- format selector ---
  const selector = make("div", "bsl-formats");
  selector.appendChild(make("span", "bsl-formats-label", "formats"));
  const boxes = make("span", "bsl-format-boxes");
  selector.appendChild(boxes);
  root.appendChild(selector);

  // --- legend: each field's colour, and how a 1 and a 0 look ---
  const legend = make("div", "bsl-legend");
  for (const [field, text] of LEGEND) {
    const item = make("span", "bsl-legend-item");
    item.appendChild(make("span", `bsl-swatch bsl-${field}`));
    item.appendChild(make("span", "", text));
    legend.appendChild(item);
  }
  const onOff = make("span", "bsl-legend-item bsl-legend-note");
  for (const bit of ["1", "0"]) {
    const sample = make("span", "bsl-sample bsl-exponent", bit);
    sample.dataset.bit = bit;
    onOff.appendChild(sample);
  }
  onOff.appendChild(make("span", "", "filled = 1, white = 0"));
  legend.appendChild(onOff);
  root.appendChild(legend);

  // --- rows ---
  const table = make("div", "bsl-table");
  root.appendChild(table);

  function drawSelector() {
    const shown = new Set(model.get("dtypes"));
    boxes.replaceChildren();
    for (const name of model.get("choices")) {
      const label = make("label", "bsl-format-choice");
      const box = make("input");
      box.type = "checkbox";
      box.checked = shown.has(name);
      box.dataset.dtype = name;
      box.addEventListener("change", () => {
        const chosen = [...boxes.querySelectorAll("input")]
          .filter((b) => b.checked)
          .map((b) => b.dataset.dtype);
        model.set("dtypes", chosen);
        model.save_changes();
      });
      label.appendChild(box);
      label.appendChild(make("span", "", name));
      boxes.appendChild(label);
    }
  }

  // One block per format: the name, then the stored value, error, kind and note on one line,
  // the bits below (grouped by field, so a narrow column wraps between fields, never mid-field).
  function drawRow(row) {
    const line = make("div", "bsl-row");
    line.dataset.dtype = row.dtype;
    line.dataset.kind = row.kind;

    const name = make("div", "bsl-name");
    name.title = row.label;
    name.appendChild(make("span", "bsl-name-main", row.dtype));
    const sub = row.short === row.dtype ? "" : `${row.short} · `;
    name.appendChild(make("span", "bsl-name-sub", `${sub}${row.bits.length} bits`));
    line.appendChild(name);

    const summary = make("div", "bsl-stored");
    summary.appendChild(make("span", "bsl-stores", "stores"));
    summary.appendChild(make("span", "bsl-value", row.value));
    const error = make("span", "bsl-err", row.error === "exact" ? "exact" : `error ${row.error}`);
    error.dataset.exact = String(row.exact);
    summary.appendChild(error);
    const kind = make("span", "bsl-kind", row.kind);
    kind.dataset.kind = row.kind;
    summary.appendChild(kind);
    if (row.note) summary.appendChild(make("span", "bsl-note", row.note));
    line.appendChild(summary);

    const near = make("div", "bsl-near");
    for (const [key, label, title] of NEAR) {
      const item = make("span", "bsl-near-item");
      item.title = title;
      item.appendChild(make("span", "bsl-near-label", label));
      const value = make("span", "bsl-near-value", row[key]);
      value.dataset.role = key;
      item.appendChild(value);
      near.appendChild(item);
    }
    line.appendChild(near);

    const bits = make("div", "bsl-bits");
    bits.title = row.detail;
    let group = null;
    [...row.bits].forEach((bit, index) => {
      const field = row.fields[index];
      if (index === 0 || row.fields[index - 1] !== field) {
        group = make("span", "bsl-field");
        group.dataset.field = field;
        bits.appendChild(group);
      }
      const box = make("button", `bsl-bit bsl-${field}`, bit);
      box.type = "button";
      box.dataset.dtype = row.dtype;
      box.dataset.bitIndex = String(index);
      box.dataset.field = field;
      box.dataset.bit = bit;
      box.title = `${FIELD_TITLES[field]} ${index} of ${row.bits.length}: click to flip`;
      box.addEventListener("click", () => {
        model.send({ type: "flip", dtype: row.dtype, index });
      });
      group.appendChild(box);
    });
    line.appendChild(bits);
    return line;
  }

  function drawRows() {
    table.replaceChildren(...model.get("rows").map(drawRow));
  }

  function drawMessage() {
    const text = model.get("error");
    message.textContent = text;
    message.hidden = !text;
    root.classList.toggle("bsl-stale", Boolean(text));
  }

  function drawValue() {
    input.value = model.get("value");
  }

  drawValue();
  drawSelector();
  drawRows();
  drawMessage();
  model.on("change:value", drawValue);
  model.on("change:dtypes", drawSelector);
  model.on("change:choices", drawSelector);
  model.on("change:rows", drawRows);
  model.on("change:error", drawMessage);
  return () => {
    model.off("change:value", drawValue);
    model.off("change:dtypes", drawSelector);
    model.off("change:choices", drawSelector);
    model.off("change:rows", drawRows);
    model.off("change:error", drawMessage);
  };
}

export default { render };
