// Terminal output to styled DOM nodes, for the job page's live log.
// SGR colours (16, 256 and RGB) and styles become classes (fN, bN, bold,
// dim, italic, underline) or inline colours; other escape sequences are
// dropped, carriage returns removed. State (colours, an escape sequence
// split between chunks) carries over from one chunk to the next.
"use strict";
const HodeiAnsi = (function () {
  function Ansi() {
    this.pending = "";
    this.reset();
  }
  Ansi.prototype.reset = function () {
    this.fg = null; this.bg = null; this.fgRgb = null; this.bgRgb = null;
    this.bold = false; this.dim = false; this.italic = false; this.underline = false;
  };
  function xterm(n) {
    if (n < 16) return null;
    if (n >= 232) {
      const v = 8 + 10 * (n - 232);
      return "rgb(" + v + "," + v + "," + v + ")";
    }
    const levels = [0, 95, 135, 175, 215, 255];
    const i = n - 16;
    return "rgb(" + levels[Math.floor(i / 36)] + "," + levels[Math.floor(i / 6) % 6] + "," + levels[i % 6] + ")";
  }
  Ansi.prototype.sgr = function (params) {
    const ps = params === "" ? [0] : params.split(/[;:]/).map((x) => parseInt(x || "0", 10));
    for (let k = 0; k < ps.length; k++) {
      const p = ps[k];
      if (p === 0) this.reset();
      else if (p === 1) this.bold = true;
      else if (p === 2) this.dim = true;
      else if (p === 3) this.italic = true;
      else if (p === 4) this.underline = true;
      else if (p === 22) { this.bold = false; this.dim = false; }
      else if (p === 23) this.italic = false;
      else if (p === 24) this.underline = false;
      else if (p >= 30 && p <= 37) { this.fg = p - 30; this.fgRgb = null; }
      else if (p >= 90 && p <= 97) { this.fg = p - 90 + 8; this.fgRgb = null; }
      else if (p === 39) { this.fg = null; this.fgRgb = null; }
      else if (p >= 40 && p <= 47) { this.bg = p - 40; this.bgRgb = null; }
      else if (p >= 100 && p <= 107) { this.bg = p - 100 + 8; this.bgRgb = null; }
      else if (p === 49) { this.bg = null; this.bgRgb = null; }
      else if (p === 38 || p === 48) {
        let index = null, rgb = null;
        if (ps[k + 1] === 5) { index = ps[k + 2]; rgb = xterm(index); k += 2; }
        else if (ps[k + 1] === 2) { rgb = "rgb(" + ps.slice(k + 2, k + 5).join(",") + ")"; k += 4; }
        if (p === 38) { this.fg = rgb ? null : index; this.fgRgb = rgb; }
        else { this.bg = rgb ? null : index; this.bgRgb = rgb; }
      }
    }
  };
  Ansi.prototype.segment = function (text) {
    const cls = [];
    if (this.fg !== null) cls.push("f" + this.fg);
    if (this.bg !== null) cls.push("b" + this.bg);
    if (this.bold) cls.push("bold");
    if (this.dim) cls.push("dim");
    if (this.italic) cls.push("italic");
    if (this.underline) cls.push("underline");
    if (!cls.length && !this.fgRgb && !this.bgRgb) return document.createTextNode(text);
    const span = document.createElement("span");
    if (cls.length) span.className = cls.join(" ");
    span.textContent = text;
    if (this.fgRgb) span.style.color = this.fgRgb;
    if (this.bgRgb) span.style.backgroundColor = this.bgRgb;
    return span;
  };
  Ansi.prototype.feed = function (input) {
    const text = this.pending + input;
    this.pending = "";
    const out = [];
    let i = 0, start = 0;
    const flush = (end) => { if (end > start) out.push(this.segment(text.slice(start, end))); };
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x0d) { flush(i); i += 1; start = i; continue; }
      if (c !== 0x1b) { i += 1; continue; }
      flush(i);
      if (i + 1 >= text.length) { this.pending = text.slice(i); return out; }
      const kind = text[i + 1];
      let end;
      if (kind === "[") {
        let j = i + 2;
        while (j < text.length && text.charCodeAt(j) >= 0x30 && text.charCodeAt(j) <= 0x3f) j++;
        while (j < text.length && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
        if (j >= text.length) end = -1;
        else {
          if (text[j] === "m") this.sgr(text.slice(i + 2, j));
          end = j + 1;
        }
      } else if (kind === "]") {
        const bel = text.indexOf("\x07", i + 2);
        const st = text.indexOf("\x1b\\", i + 2);
        if (bel < 0 && st < 0) end = -1;
        else if (st < 0 || (bel >= 0 && bel < st)) end = bel + 1;
        else end = st + 2;
      } else {
        end = i + 2;
      }
      if (end < 0) {
        // An escape sequence split between chunks (give up on absurd ones).
        this.pending = text.length - i < 256 ? text.slice(i) : "";
        return out;
      }
      i = end;
      start = i;
    }
    flush(text.length);
    return out;
  };


  return Ansi;
})();
