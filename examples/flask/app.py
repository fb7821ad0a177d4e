"""A Flask + Flask-SQLAlchemy shop using imgsearch's models and its composable search Select.

    IMGSEARCH_DATABASE_URL=postgresql://... IMGSEARCH_MODEL=... flask --app examples/flask/app.py run

    POST /products/<sku>/images        multipart "image" (+ tenant, category, price): upload
    GET  /search?q=red+shoes&tenant=acme&category=shoes&price_max=80&in_stock=1&k=20
    GET  /images/<id>/similar?tenant=acme

The app owns a table of its own (``stock``); searches join it to imgsearch's hybrid search, in one
statement, after ``apply_search_settings`` in the same transaction.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, Integer, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from imgsearch import Catalog
from imgsearch.db.models import Product
from imgsearch.errors import ImgSearchError, InvalidInput, NotFound
from imgsearch.settings import Settings


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Stock(db.Model):  # type: ignore[name-defined,misc]
    """The shop's own table: units in stock per imgsearch product."""

    __tablename__ = "stock"

    product_pk: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    warehouse: Mapped[str] = mapped_column(Text, default="main")
    quantity: Mapped[int] = mapped_column(Integer, default=0)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    catalog = Catalog.open(settings=settings)  # migrates imgsearch's schema, registers the model
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = catalog.engine.url.render_as_string(hide_password=False)
    db.init_app(app)
    app.extensions["imgsearch"] = catalog
    with app.app_context():
        db.create_all()  # only the app's own tables: imgsearch's belong to its migrations
        # searches with a tenant run as the role imgsearch_app (row-level security): tables they
        # join must be readable by it
        with db.engine.begin() as conn:
            conn.exec_driver_sql("GRANT SELECT ON stock TO imgsearch_app")

    @app.errorhandler(ImgSearchError)
    def imgsearch_error(exc: ImgSearchError) -> tuple[Any, int]:
        status = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, InvalidInput) else 503
        return jsonify(error=str(exc), type=type(exc).__name__), status

    @app.post("/products/<sku>/images")
    def upload(sku: str) -> tuple[Any, int]:
        file = request.files.get("image")
        if file is None:
            abort(400, "multipart field 'image' is missing")
        image_id = catalog.add(
            file.read(),
            tenant=request.form.get("tenant", "default"),
            product_id=sku,
            category=request.form.get("category"),
            price=request.form.get("price"),
        )
        return jsonify(image_id=image_id, state=catalog.get(image_id).state), 202

    def run_search(**query: Any) -> Any:
        args = request.args
        tenant = args.get("tenant")
        k = args.get("k", 10, type=int)
        stmt = catalog.search_select(
            **query,
            tenant=tenant,
            category=args.getlist("category") or None,
            price_min=args.get("price_min"),
            price_max=args.get("price_max"),
            k=k,
        )
        # the app's own join and filter, in the same statement as the vector search
        if args.get("in_stock"):
            stmt = stmt.join(Stock, Stock.product_pk == Product.id).where(Stock.quantity > 0)
        else:
            stmt = stmt.outerjoin(Stock, Stock.product_pk == Product.id)
        stmt = stmt.add_columns(Stock.quantity)
        with db.session.begin():
            catalog.apply_search_settings(db.session.connection(), k, tenant=tenant)
            rows = db.session.execute(stmt).all()
        return jsonify(
            hits=[
                {
                    "image_id": row.image_id,
                    "product_id": row.product_id,
                    "category": row.category,
                    "price": None if row.price is None else str(row.price),
                    "distance": row.distance,
                    "in_stock": row.quantity or 0,
                }
                for row in rows
            ]
        )

    @app.get("/search")
    def search() -> Any:
        text = request.args.get("q")
        if not text:
            abort(400, "give a query: ?q=...")
        return run_search(text=text)

    @app.get("/images/<int:image_id>/similar")
    def similar(image_id: int) -> Any:
        return run_search(similar_to=image_id)

    return app
