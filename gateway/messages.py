# ruff: noqa: E501 - one sentence per line reads better than split Japanese strings
"""Every user-visible string of the gateway's pages, in one catalogue (Japanese first, §2).

Templates and handlers refer to keys; `text(key, lang)` falls back to Japanese, so a language
can be added key by key. Error pages look their message up by the error's `code`.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_LANGUAGE = "ja"

CATALOGUE: Mapping[str, Mapping[str, str]] = {
    "ja": {
        "service": "外為Web 為替予約サービス",
        # buttons and labels (manual wording)
        "cert_login": "電子証明書ログイン",
        "cert_acquire": "電子証明書取得",
        "cert_renew": "証明書更新",
        "password_change": "パスワード変更",
        "logout": "ログアウト",
        "login": "ログイン",
        "relogin": "再ログイン",
        "cancel": "キャンセル",
        "back_to_login": "ログイン画面へ",
        "user_id": "ユーザID",
        "user_name": "ユーザ名",
        "customer": "お客様名",
        "last_login": "前回ログイン日時",
        "password": "パスワード",
        "acquisition_password": "証明書パスワード",
        "current_password": "現在のパスワード",
        "new_password": "新しいパスワード",
        "confirm_password": "再入力",
        "confirm_hint": "確認のため、入力されたパスワードをもう一度入力してください。",
        # page titles and texts
        "title_landing": "ログイン",
        "title_login": "ログイン画面(パスワード入力画面)",
        "title_acquire": "電子証明書発行申請",
        "title_renew": "電子証明書更新",
        "title_password": "パスワード変更画面",
        "title_logout": "ログアウト",
        "title_logged_out": "ログアウトしました",
        "title_error": "エラー",
        "landing_intro": "本サービスを初めてご利用になるお客様は、[電子証明書取得] ボタンを押下してください。",
        "acquire_intro": "ユーザID、パスワード、証明書(取得用)パスワードをご入力ください。",
        "renew_intro": "現在お使いのログインパスワードを入力してください。新しい証明書ファイルはこのパスワードで保護されます。",
        "renew_offer": "電子証明書の有効期限が1カ月以内です。[証明書更新] ボタンから更新してください。",
        "cert_valid_until": "電子証明書の有効期限",
        "must_change_temporary": "初回ログインです。パスワードを変更してください。",
        "must_change_expired": "パスワードの有効期限が切れています。パスワードを変更してください。",
        "password_rules": "8桁以上、英字と数字を混在、ユーザID・ユーザ名と異なり、前回・前々回と異なること。",
        "password_changed": "パスワードを変更しました。",
        "continue": "サービスへ",
        "relogin_offer": "このユーザIDは別の画面でログイン中です。[再ログイン] を押下すると、前の画面のセッションは終了します。",
        "logout_confirm": "ログアウトしますか。",
        "logged_out": "ログアウトが完了しました。",
        "password_mismatch": "新しいパスワードと再入力が一致しません。",
        # errors by code
        "error_bad_credentials": "ユーザIDまたはパスワードが正しくありません。大文字・小文字をご確認の上、再入力してください。",
        "error_locked": "ログインパスワードがロックされています。お取引店またはヘルプデスクへご連絡ください。",
        "error_busy": "同じユーザIDの認証を処理中です。しばらくしてから、もう一度お試しください。",
        "error_cert_required": "電子証明書が提示されていません。ブラウザで電子証明書を選択してください。電子証明書をお持ちでない場合は [電子証明書取得] から取得してください。",
        "error_cert_refused": "この電子証明書はご利用いただけません。",
        "error_cert_revoked": "この電子証明書は失効しています。ヘルプデスクへご連絡の上、電子証明書を再取得してください。",
        "error_cert_expired": "この電子証明書は有効期限が切れています。電子証明書を再取得してください。",
        "error_cert_not_yet_valid": "この電子証明書はまだ有効ではありません。",
        "error_cert_untrusted": "この電子証明書は本サービスのものではありません。",
        "error_cert_wrong_usage": "この電子証明書はログインに使用できません。",
        "error_cert_unknown": "この電子証明書は本サービスに登録されていません。",
        "error_cert_malformed": "この電子証明書を読み取れません。",
        "error_cert_user_mismatch": "この電子証明書は別のユーザIDのものです。",
        "error_revocation_unavailable": "電子証明書の有効性を確認できないため、現在ログインできません。しばらくしてから再度お試しください。",
        "error_session_required": "ログインしてください。",
        "error_session_timeout": "30分間操作がなかったため、セッションが無効になりました。再度ログインしてください。",
        "error_session_cert_mismatch": "このセッションは別の電子証明書で開始されました。再度ログインしてください。",
        "error_csrf_failed": "画面の有効期限が切れました。もう一度操作してください。",
        "error_role_forbidden": "この画面は管理者のみご利用いただけます。",
        "error_backend_unavailable": "現在サービスをご利用いただけません。しばらくしてから再度お試しください。",
        "error_backend_timeout": "サービスの応答がありません。しばらくしてから再度お試しください。",
        "error_must_change_password": "パスワードを変更してください。",
        "error_bad_request": "入力内容に誤りがあります。",
        "error_not_found": "ページが見つかりません。",
        "error_ca_unavailable": "現在電子証明書を発行できません。しばらくしてから再度お試しください。",
        "error_acquisition_bad_credentials": "証明書パスワードが正しくありません。",
        "error_acquisition_locked": "証明書パスワードがロックされています。ヘルプデスクへご連絡ください。",
        "error_usable_certificate_exists": "有効な電子証明書が発行済みです。端末を変更する場合はヘルプデスクへご連絡ください。",
        "error_attempt_in_progress": "発行処理中です。しばらくしてから再度お試しください。",
        "error_renewal_not_open": "電子証明書の更新は有効期限の1カ月前から可能です。",
        "error_certificate_expired": "有効期限が切れた電子証明書は更新できません。電子証明書を再取得してください。",
        "error_not_newest_certificate": "最新の電子証明書で更新してください。",
        "error_acquisition_not_open": "電子証明書の再取得はまだできません。",
        "error_internal_error": "システムエラーが発生しました。",
        "error_default": "処理を完了できませんでした。",
        # password rules (R-PW-1, R-PW-4), by violation code
        "password_too_short": "パスワードは8桁以上にしてください。",
        "password_too_long": "パスワードが長すぎます。",
        "password_needs_letters_and_digits": "英字と数字を混在させてください。",
        "password_same_as_user_id": "ユーザIDと異なる文字列にしてください。",
        "password_same_as_user_name": "ユーザ名と異なる文字列にしてください。",
        "password_reused": "前回および前々回のパスワードと異なるものにしてください。",
        "password_too_common": "推測されやすいパスワードは使用できません。",
    },
}


def text(key: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """The string for `key` in `lang`, falling back to Japanese, then to the key itself."""
    table = CATALOGUE.get(lang) or CATALOGUE[DEFAULT_LANGUAGE]
    return table.get(key) or CATALOGUE[DEFAULT_LANGUAGE].get(key, key)


def error_text(code: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """The message of an error page for an error `code`."""
    key = f"error_{code}"
    table = CATALOGUE[DEFAULT_LANGUAGE]
    return text(key, lang) if key in table else text("error_default", lang)
