"""The web pages' words, in English and French: the console's labels and the sender's page.

In: a language (``en``, ``fr``). Out: the labels templates show (``t.login``), what a
state means to the sender, the story of a job told from its timeline in plain words,
and what the sender should do once it is over. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.arcodes import Category

LANGUAGES = ("en", "fr")

LABELS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "title": "Fax gateway", "console": "Fax gateway console", "login": "Log in", "logout": "Log out",
        "name": "Name", "password": "Password", "bad_login": "Wrong name or password.",
        "no_admins": "The console has no users: add an [[http.admins]] table to the settings.",
        "queue": "Queue", "jobs": "Jobs", "waiting": "Waiting for a person", "none": "None.",
        "counts": "Jobs by state", "health": "Health", "provider": "Last provider answers",
        "smtp": "SMTP intake", "store": "Job store", "storage": "Storage", "ok": "ok", "not_ok": "failing",
        "no_answer_yet": "no call yet", "job": "Job", "state": "State", "number": "Number",
        "created": "Created", "tries": "Tries", "sender": "Sender", "reason": "Reason", "since": "Since",
        "limit": "At most", "filter": "Show", "shown": "shown", "timeline": "Timeline", "receipts": "Receipts",
        "notices": "Notifications", "actions": "Actions", "no_action": "No action applies to this job now.",
        "retry": "Retry now", "release": "Release", "cancel": "Cancel the fax",
        "resolve-sent": "It was sent (provider's records)", "resolve-not-sent": "It was not sent: submit again",
        "done": "Done", "refused": "Refused", "back": "Back to the job", "all_states": "any state",
        "since_hint": "2h, 3d or 2026-01-31", "code": "code", "at": "at", "pages": "pages", "to": "to",
        "error": "Error", "status": "Status", "provider_one": "Provider",
    },
    "fr": {
        "title": "Passerelle fax", "console": "Console de la passerelle fax", "login": "Se connecter",
        "logout": "Se déconnecter", "name": "Nom", "password": "Mot de passe",
        "bad_login": "Nom ou mot de passe incorrect.",
        "no_admins": "La console n'a pas d'utilisateur : ajoutez une table [[http.admins]] aux réglages.",
        "queue": "File", "jobs": "Tâches", "waiting": "En attente d'une personne", "none": "Aucune.",
        "counts": "Tâches par état", "health": "Santé", "provider": "Dernières réponses du fournisseur",
        "smtp": "Réception SMTP", "store": "Base des tâches", "storage": "Stockage", "ok": "ok",
        "not_ok": "en échec", "no_answer_yet": "pas encore d'appel", "job": "Tâche", "state": "État",
        "number": "Numéro", "created": "Créée", "tries": "Essais", "sender": "Expéditeur", "reason": "Motif",
        "since": "Depuis", "limit": "Au plus", "filter": "Afficher", "shown": "affichées",
        "timeline": "Historique", "receipts": "Accusés", "notices": "Notifications", "actions": "Actions",
        "no_action": "Aucune action ne s'applique à cette tâche pour l'instant.", "retry": "Réessayer maintenant",
        "release": "Libérer", "cancel": "Annuler le fax", "resolve-sent": "Il est parti (relevé du fournisseur)",
        "resolve-not-sent": "Il n'est pas parti : le soumettre à nouveau", "done": "Fait", "refused": "Refusé",
        "back": "Retour à la tâche", "all_states": "tout état", "since_hint": "2h, 3d ou 2026-01-31",
        "code": "code", "at": "à", "pages": "pages", "to": "à", "error": "Erreur", "status": "État",
        "provider_one": "Fournisseur",
    },
}  # fmt: skip

# The sender's page.
SENDER: Mapping[str, Mapping[str, str]] = {
    "en": {
        "title": "Your fax", "number": "Fax number", "subject": "Your mail", "pages": "Pages", "job": "Job",
        "now": "Where it is now", "story": "What happened", "next": "What to do", "updated": "Last change",
        "gone_title": "This page is no longer kept",
        "gone": "The fax this link was for ended more than {days} days ago; its page is gone. "
                "The receipt mail you got says how it ended.",
    },
    "fr": {
        "title": "Votre fax", "number": "Numéro de fax", "subject": "Votre message", "pages": "Pages",
        "job": "Tâche", "now": "Où il en est", "story": "Ce qui s'est passé", "next": "Que faire",
        "updated": "Dernier changement", "gone_title": "Cette page n'est plus conservée",
        "gone": "Le fax de ce lien s'est terminé il y a plus de {days} jours ; sa page a été effacée. "
                "L'accusé reçu par e-mail dit comment il s'est terminé.",
    },
}  # fmt: skip

# Where a job is now, by state (and, for holds, by what it waits for), for the sender.
NOW: Mapping[str, Mapping[str, str]] = {
    "en": {
        "queued": "Waiting its turn: the gateway hands it to the fax provider shortly.",
        "uploading": "Being handed to the fax provider.",
        "submitting": "Being handed to the fax provider.",
        "submitted": "With the fax provider, which calls the recipient's machine. The receipt comes when it answers.",
        "deferred": "Waiting for another try: the last one did not go through.",
        "held": "Waiting for the fax administrator to fix the gateway's account or settings; it goes out then.",
        "held-credit": "Waiting for the fax account to be credited; it goes out as soon as it is.",
        "ambiguous": "Waiting for the fax administrator to check with the provider whether it went out: "
                     "it is never sent twice.",
        "quarantined": "Stopped by a fault of the gateway; the fax administrator has been told.",
        "delivered": "Delivered: the recipient's machine confirmed it.",
        "confirmed": "Delivered: the fax administrator confirmed it from the provider's records.",
        "failed": "Not delivered: {reason}.",
        "cancelled": "Cancelled by the fax administrator: it was not sent.",
    },
    "fr": {
        "queued": "En attente de son tour : la passerelle le confie bientôt au fournisseur de fax.",
        "uploading": "En cours de remise au fournisseur de fax.",
        "submitting": "En cours de remise au fournisseur de fax.",
        "submitted": "Chez le fournisseur de fax, qui appelle le fax du destinataire. L'accusé vient quand il répond.",
        "deferred": "En attente d'un nouvel essai : le dernier n'a pas abouti.",
        "held": "En attente de l'administrateur fax, qui doit corriger le compte ou les réglages ; il partira ensuite.",
        "held-credit": "En attente du recrédit du compte fax ; il partira dès que ce sera fait.",
        "ambiguous": "En attente de l'administrateur fax, qui vérifie auprès du fournisseur s'il est parti : "
                     "il n'est jamais envoyé deux fois.",
        "quarantined": "Arrêté par une panne de la passerelle ; l'administrateur fax est prévenu.",
        "delivered": "Remis : le fax du destinataire l'a confirmé.",
        "confirmed": "Remis : l'administrateur fax l'a confirmé d'après le relevé du fournisseur.",
        "failed": "Non remis : {reason}.",
        "cancelled": "Annulé par l'administrateur fax : il n'a pas été envoyé.",
    },
}  # fmt: skip

# The story: timeline event kinds a sender cares about, in words ({detail}: the event's own words).
STORY: Mapping[str, Mapping[str, str]] = {
    "en": {
        "accepted": "Your mail was accepted by the gateway.",
        "submitted": "Handed to the fax provider.",
        "deferred": "It could not be handed over yet; another try is planned.",
        "busy retry": "The line was busy or nobody answered; another try is planned.",
        "held": "Waiting for the fax administrator.",
        "ambiguous": "The provider's answer was lost: the gateway makes sure it is not sent twice.",
        "quarantined": "Stopped by a fault of the gateway.",
        "operator: retry": "Queued again by the fax administrator.",
        "operator: release": "Released by the fax administrator.",
        "released": "Released: the fault was fixed.",
        "operator: resolve --not-sent": "The fax administrator found it was not sent: queued again.",
        "operator: resolve --sent": "The fax administrator confirmed from the provider's records that it went out.",
        "delivered": "Delivered: the recipient's machine confirmed it.",
        "failed": "Not delivered: {detail}",
        "operator: cancel": "Cancelled by the fax administrator.",
        "notice sent": "A mail about it was sent to you.",
    },
    "fr": {
        "accepted": "Votre message a été accepté par la passerelle.",
        "submitted": "Confié au fournisseur de fax.",
        "deferred": "Il n'a pas encore pu être confié ; un nouvel essai est prévu.",
        "busy retry": "La ligne était occupée ou personne n'a répondu ; un nouvel essai est prévu.",
        "held": "En attente de l'administrateur fax.",
        "ambiguous": "La réponse du fournisseur s'est perdue : la passerelle veille à ne pas l'envoyer deux fois.",
        "quarantined": "Arrêté par une panne de la passerelle.",
        "operator: retry": "Remis en file par l'administrateur fax.",
        "operator: release": "Libéré par l'administrateur fax.",
        "released": "Libéré : la panne est réparée.",
        "operator: resolve --not-sent": "L'administrateur fax a constaté qu'il n'était pas parti : remis en file.",
        "operator: resolve --sent": "L'administrateur fax a confirmé d'après le relevé du fournisseur qu'il est parti.",
        "delivered": "Remis : le fax du destinataire l'a confirmé.",
        "failed": "Non remis : {detail}",
        "operator: cancel": "Annulé par l'administrateur fax.",
        "notice sent": "Un message à son sujet vous a été envoyé.",
    },
}  # fmt: skip

# What to do, once it is over (or while it waits), for the sender.
NEXT: Mapping[str, Mapping[str, str]] = {
    "en": {
        "delivered": "Nothing.",
        "waiting": "Nothing for now: you will get the receipt by mail.",
        "failed": "The fax was not sent, for the reason above. Correct what it names (the number, the document), "
                  "then send the mail again.",
        "cancelled": "Send the mail again if it is still needed.",
        Category.BUSY: "The line was busy. Send the mail again later.",
        Category.NO_ANSWER: "No fax machine answered. Check with the recipient that it is on and that the number "
                            "is a fax line, then send the mail again.",
        Category.WRONG_NUMBER: "The number does not reach a fax machine. Check it and send the mail again.",
        Category.DOCUMENT: "The document could not be converted. Send it again as a plain PDF.",
        Category.TRANSMISSION: "The transmission broke off. Send the mail again.",
        Category.BARRED: "The number refuses faxes. Contact the recipient another way.",
        Category.UNKNOWN: "Ask the fax administrator, quoting the job.",
    },
    "fr": {
        "delivered": "Rien.",
        "waiting": "Rien pour l'instant : vous recevrez l'accusé par e-mail.",
        "failed": "Le fax n'a pas été envoyé, pour le motif ci-dessus. Corrigez ce qu'il désigne (le numéro, le "
                  "document), puis renvoyez le message.",
        "cancelled": "Renvoyez le message s'il est toujours nécessaire.",
        Category.BUSY: "La ligne était occupée. Renvoyez le message plus tard.",
        Category.NO_ANSWER: "Aucun fax n'a répondu. Vérifiez avec le destinataire qu'il est allumé et que le "
                            "numéro est une ligne de fax, puis renvoyez le message.",
        Category.WRONG_NUMBER: "Ce numéro n'aboutit pas à un fax. Vérifiez-le et renvoyez le message.",
        Category.DOCUMENT: "Le document n'a pas pu être converti. Renvoyez-le en PDF simple.",
        Category.TRANSMISSION: "La transmission a été interrompue. Renvoyez le message.",
        Category.BARRED: "Ce numéro refuse les fax. Contactez le destinataire autrement.",
        Category.UNKNOWN: "Contactez l'administrateur fax en citant la tâche.",
    },
}  # fmt: skip

# Where it is, in one or two words (the badge beside the number), by the keys of NOW.
WORD: Mapping[str, Mapping[str, str]] = {
    "en": {"queued": "waiting", "uploading": "being sent", "submitting": "being sent", "submitted": "with the provider",
           "deferred": "waiting", "held": "waiting", "held-credit": "waiting", "ambiguous": "being checked",
           "quarantined": "stopped", "delivered": "delivered", "confirmed": "delivered", "failed": "not delivered",
           "cancelled": "cancelled"},
    "fr": {"queued": "en attente", "uploading": "en cours d'envoi", "submitting": "en cours d'envoi",
           "submitted": "chez le fournisseur", "deferred": "en attente", "held": "en attente",
           "held-credit": "en attente", "ambiguous": "en vérification", "quarantined": "arrêté", "delivered": "remis",
           "confirmed": "remis", "failed": "non remis", "cancelled": "annulé"},
}  # fmt: skip
