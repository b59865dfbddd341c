// Remembered view preferences (localStorage), with a default when unset or unavailable.

const PREFIX = "runevents.pref.";

export function getPref(name, fallback) {
  try {
    const raw = localStorage.getItem(PREFIX + name);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

export function setPref(name, value) {
  try {
    localStorage.setItem(PREFIX + name, JSON.stringify(value));
  } catch {
    /* private mode or storage full: the preference lasts for this page only */
  }
}
