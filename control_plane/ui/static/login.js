"use strict";
document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await Lineside.api("POST", "/auth/login", { email: event.target.email.value, password: event.target.password.value });
    const next = new URLSearchParams(location.search).get("next");
    location.href = next && next.startsWith("/ui/") ? next : "/ui/";
  } catch (e) {
    error.textContent = e.message;
  }
});
